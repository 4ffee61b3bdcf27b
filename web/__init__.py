"""The websocket and HTTP server (one port), the wire protocol, and the page."""
