"""The engine scaled out on Ray (``livesight serve --ray``): shards and the gateway that routes to them.

Each shard (:mod:`cluster.shard`) is a Ray actor holding one :class:`~engine.engine.Engine` (its own model
on its own GPU or CPU slot) and a share of the streams with their memories. The gateway
(:mod:`cluster.gateway`) runs in the serving process, meets ``web/``'s :class:`~engine.api.EngineAPI`,
places streams on shards by load (:mod:`cluster.placement`) and forwards each call to the owning shard
with Ray's own means: actor calls, and streaming generators for answers and reports. Only this package
imports Ray, and only ``serve --ray`` imports this package.
"""
