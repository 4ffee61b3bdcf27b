"""Display rotation: a video recorded sideways with a display matrix (a phone's portrait video) or a camera
sending a display-orientation SEI reaches memory the way a player shows it.

Real files with real display matrices: written by PyAV (every rotation and mirror) and by Debian's ffmpeg
(``-metadata:s:v rotate=90``, the way phone videos are usually remuxed); the plain rotations are also
compared with the ffmpeg CLI's own autorotation. The camera is GStreamer's RTSP server serving H.264 with
the SEI inserted by ffmpeg's ``h264_metadata`` bitstream filter.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from stream.file import FileSource
from stream.picture import UPRIGHT, Orienter, from_matrix, to_rgb, upright
from stream.rtsp import RtspSource
from stream.source import Source
from tests.support.rtsp import RtspServer

W, H = 160, 96
COLOURS = {"R": (255, 0, 0), "G": (0, 255, 0), "B": (0, 0, 255), "W": (255, 255, 255)}


def quadrants() -> np.ndarray:
    """Red top-left, green top-right, blue bottom-left, white bottom-right: every turn and mirror differs."""
    img = np.zeros((H, W, 3), np.uint8)
    img[: H // 2, : W // 2] = COLOURS["R"]
    img[: H // 2, W // 2 :] = COLOURS["G"]
    img[H // 2 :, : W // 2] = COLOURS["B"]
    img[H // 2 :, W // 2 :] = COLOURS["W"]
    return img


def corners(img: np.ndarray) -> str:
    """The colours at the centres of the four quadrants: top-left, top-right, bottom-left, bottom-right."""
    h, w = img.shape[:2]
    out = ""
    for y, x in ((h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4)):
        px = tuple(int(v > 128) * 255 for v in img[y, x])
        out += next((k for k, c in COLOURS.items() if c == px), "?")
    return out


def expected(degrees: int, hflip: bool, vflip: bool) -> np.ndarray:
    """What a player shows: turned ``degrees`` counter-clockwise, then mirrored (numpy's own rot90)."""
    img = np.rot90(quadrants(), k=degrees // 90)
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    return img


def write_h264(path: Path, *, degrees: int | None = None, hflip: bool = False, vflip: bool = False) -> Path:
    """Two seconds of the quadrants in H.264 MP4, with a display matrix when ``degrees`` is given."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10, options={"g": "10", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if degrees is not None:
            stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        frame = av.VideoFrame.from_ndarray(quadrants(), format="rgb24")
        for i in range(20):
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def ffmpeg(*args: str) -> bytes:
    """Debian's ffmpeg CLI (5.1): an independent writer of display matrices and SEIs, and a reference."""
    return subprocess.run(["ffmpeg", "-v", "error", "-y", *args], capture_output=True, check=True, timeout=30).stdout


async def ffmpeg_picture(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """The first frame as the ffmpeg CLI shows it (it applies the display matrix itself: autorotate)."""
    raw = await asyncio.to_thread(ffmpeg, "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-")
    return np.frombuffer(raw, np.uint8).reshape(shape)


async def first_frame(source: Source) -> np.ndarray:
    frames = aiter(source)
    try:
        return (await asyncio.wait_for(anext(frames), 20)).image
    finally:
        await source.close()


CASES = [(d, h, v) for d in (0, 90, 180, 270) for h, v in ((False, False), (True, False), (False, True))]


@pytest.mark.parametrize(("degrees", "hflip", "vflip"), CASES)
async def test_files_reach_memory_as_displayed(tmp_path: Path, degrees: int, hflip: bool, vflip: bool) -> None:
    path = write_h264(tmp_path / "clip.mp4", degrees=degrees, hflip=hflip, vflip=vflip)
    image = await first_frame(FileSource("clip", str(path), fps=2.0, lossless=True))
    want = expected(degrees, hflip, vflip)
    assert image.shape == want.shape
    assert corners(image) == corners(want), (corners(image), corners(want))
    assert image.flags.c_contiguous


@pytest.mark.parametrize("degrees", [90, 180, 270])
async def test_agrees_with_ffmpegs_own_autorotation(tmp_path: Path, degrees: int) -> None:
    path = write_h264(tmp_path / "clip.mp4", degrees=degrees)
    theirs = await ffmpeg_picture(path, (H, W, 3) if degrees == 180 else (W, H, 3))
    ours = await first_frame(FileSource("clip", str(path), fps=2.0, lossless=True))
    assert ours.shape == theirs.shape
    assert corners(ours) == corners(theirs)


async def test_a_phone_style_file_remuxed_by_ffmpeg(tmp_path: Path) -> None:
    """The MP4 ``tkhd`` matrix as Debian's ffmpeg writes it for ``rotate=90``: a 90-degree turn, whatever
    its sign convention, so the picture comes out portrait and matches ffmpeg's autorotation."""
    plain = write_h264(tmp_path / "plain.mp4")
    tagged = tmp_path / "phone.mp4"
    await asyncio.to_thread(ffmpeg, "-i", str(plain), "-c", "copy", "-metadata:s:v", "rotate=90", str(tagged))
    image = await first_frame(FileSource("phone", str(tagged), fps=2.0, lossless=True))
    assert image.shape == (W, H, 3)
    assert corners(image) == corners(await ffmpeg_picture(tagged, (W, H, 3)))


async def test_a_camera_with_a_display_orientation_sei(tmp_path: Path) -> None:
    """H.264 whose keyframes carry a display-orientation SEI (90 degrees), over a real RTSP server. FFmpeg
    attaches the SEI to the frame that carried it only; frames after it keep its orientation."""
    plain = write_h264(tmp_path / "plain.mp4")
    # Longer than a connection takes, so the camera still plays when the reader joins it.
    long = tmp_path / "long.mp4"
    await asyncio.to_thread(ffmpeg, "-stream_loop", "15", "-i", str(plain), "-c", "copy", str(long))
    sei = tmp_path / "sei.mp4"
    bsf = "h264_metadata=display_orientation=insert:rotate=90"
    await asyncio.to_thread(ffmpeg, "-i", str(long), "-c", "copy", "-bsf:v", bsf, str(sei))
    server = RtspServer(extra=("--file", str(sei)))
    await asyncio.to_thread(server.start)
    try:
        source = RtspSource("cam", server.url, fps=4.0)
        frames = aiter(source)
        images = [(await asyncio.wait_for(anext(frames), 20)).image for _ in range(4)]
        await source.close()
    finally:
        server.close()
    want = corners(expected(90, False, False))
    for image in images:  # the first and the ones after it alike
        assert image.shape == (W, H, 3)
        assert corners(image) == want


def test_only_right_angle_matrices_are_applied() -> None:
    def matrix(a: float, b: float, c: float, d: float) -> np.ndarray:
        return np.array([a * 65536, b * 65536, 0, c * 65536, d * 65536, 0, 0, 0, 1 << 30], dtype="<i4")

    assert from_matrix(matrix(1, 0, 0, 1)) == UPRIGHT
    assert from_matrix(matrix(0, -2, 2, 0)) == (0, -1, 1, 0)  # a scale does not change which way is up
    assert from_matrix(matrix(0.7071, 0.7071, -0.7071, 0.7071)) == UPRIGHT  # 45 degrees: left alone
    assert from_matrix(np.zeros(9, "<i4")) == UPRIGHT
    assert from_matrix(np.zeros(4, "<i4")) == UPRIGHT
    img = quadrants()
    assert upright(img, UPRIGHT) is not None
    assert corners(upright(img, (0, -1, 1, 0))) == corners(np.rot90(img))


def test_frames_without_a_matrix_keep_the_last_one_seen() -> None:
    frame = av.VideoFrame.from_ndarray(quadrants(), format="rgb24")
    orienter = Orienter()
    orienter.current = (0, 1, -1, 0)  # as if a frame with an SEI had come before
    assert corners(orienter.picture(frame)) == corners(np.rot90(quadrants(), k=3))
    assert corners(to_rgb(frame)) == corners(quadrants())
