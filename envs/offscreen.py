"""MuJoCo offscreen rendering on machines without a display (EGL, Mesa's software renderer on a CPU).

MuJoCo picks its OpenGL backend once, from `MUJOCO_GL`, when `mujoco` is first imported; importing
`envs` sets the default `MUJOCO_GL=egl` (a value you set yourself is kept). `offscreen_renderer`
sizes the offscreen buffer to the image and turns off shadows and multisampling, which cost most of
a small frame's rendering time in software.
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Any

DEFAULT_BACKEND = "egl"
# Renderers still open when the interpreter exits are closed first: MuJoCo's EGL module terminates
# its display at exit, after which a renderer's finaliser fails and prints a traceback. The hook is
# registered after MuJoCo's (exit hooks run last-registered first).
_OPEN_RENDERERS: weakref.WeakSet = weakref.WeakSet()


def _close_open_renderers() -> None:
    for renderer in list(_OPEN_RENDERERS):
        renderer.close()


def use_default_backend() -> None:
    """Set `MUJOCO_GL` to EGL unless the user chose a backend; must run before `mujoco` is imported.

    Also makes Mesa's software rasteriser draw in the calling thread (`LP_NUM_THREADS=0`, unless
    set): its worker threads do not survive `fork`, so a process forked after rendering (the
    evaluator's vector-env workers) would hang on its first frame. At 96 x 96 this still draws
    hundreds of frames per second (docs/visuomotor.md).
    """
    os.environ.setdefault("MUJOCO_GL", DEFAULT_BACKEND)
    os.environ.setdefault("LP_NUM_THREADS", "0")


def offscreen_renderer(model: Any, width: int, height: int) -> Any:
    """A `mujoco.Renderer` of `width` x `height` pixels for `model` (an `MjModel`, modified in place:
    offscreen buffer at least the image size, no shadows, no multisampling).

    Raises RuntimeError naming the fix when MuJoCo was imported with the windowed GLFW backend
    (before `envs`, without `MUJOCO_GL`) on a machine without a display.
    """
    import mujoco

    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height} must be positive")
    backend = getattr(mujoco.gl_context.GLContext, "__module__", "")
    if backend.endswith("glfw") and not os.environ.get("DISPLAY"):
        raise RuntimeError("MuJoCo was imported with the GLFW backend, which needs a display; set "
                           f"MUJOCO_GL={DEFAULT_BACKEND} (or osmesa) before importing mujoco, or import envs first")
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0
    renderer = mujoco.Renderer(model, height, width)
    if not _OPEN_RENDERERS:
        atexit.unregister(_close_open_renderers)
        atexit.register(_close_open_renderers)
    _OPEN_RENDERERS.add(renderer)
    return renderer
