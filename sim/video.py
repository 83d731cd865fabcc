"""`s2r eval --video out.mp4|out.gif`: an offscreen render of one rollout of an exported policy.

Runs one env of the evaluation set-up (same task config, deploy's ObsBuilder and ActionMapper, the
ONNX on onnxruntime) and renders it with MuJoCo's renderer (MUJOCO_GL=egl on headless machines).
"""

from __future__ import annotations

import math
from pathlib import Path

import mujoco
import numpy as np
import torch

from sim.evaluate import load_policy
from sim.tasks import make_env


class VideoError(ValueError):
    pass


def scene_camera(model: mujoco.MjModel, name: str | None):
    """The model's named camera, or a camera tracking the first body."""
    if name is not None and mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name) >= 0:
        return name
    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
    cam.trackbodyid = 1
    cam.distance = max(0.6, 3.0 * model.stat.extent)
    cam.elevation = -20.0
    cam.azimuth = 135.0
    return cam


def offscreen_renderer(model: mujoco.MjModel, width: int, height: int) -> mujoco.Renderer:
    """A renderer with an offscreen buffer of the requested size; VideoError naming the fix without GL."""
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)
    try:
        return mujoco.Renderer(model, height, width)
    except Exception as e:  # no GL context: name the fix
        raise VideoError(f"cannot render offscreen ({e}); on a headless machine set MUJOCO_GL=egl") from e


def write_video(frames: list[np.ndarray], out: Path, fps: float) -> None:
    if out.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(out, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return
    if out.suffix.lower() != ".mp4":
        raise VideoError(f"--video {out}: use a .mp4 or .gif file name")
    import av

    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def record_video(
    policy_path: str | Path,
    out: str | Path,
    seconds: float = 10.0,
    seed: int = 1,
    max_fps: float = 25.0,
    width: int = 640,
    height: int = 480,
) -> dict:
    out = Path(out)
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise VideoError(f"--video {out}: use a .mp4 or .gif file name")
    policy, cfg = load_policy(policy_path)
    env = make_env(policy.spec.task, 1, cfg, seed=seed)
    policy.spec.check_compatible(env.spec)
    model = env.backend.model
    renderer = offscreen_renderer(model, width, height)
    camera = scene_camera(model, getattr(env, "video_camera", None))
    target_mocap = -1
    tid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "target")
    if tid >= 0 and "target_pos_w" in env.readings:
        target_mocap = model.body_mocapid[tid]
    data = mujoco.MjData(model)
    stride = max(1, math.ceil(env.spec.control_hz / max_fps))
    frames = []
    obs = env.reset()
    for t in range(round(seconds * env.spec.control_hz)):
        if t % stride == 0:
            data.qpos[:] = env.backend.qpos[0].numpy()
            if target_mocap >= 0:
                data.mocap_pos[target_mocap] = env.readings["target_pos_w"][0].cpu().numpy()
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera=camera)
            frames.append(renderer.render().copy())
        action = policy(obs["policy"].cpu().numpy())
        obs, *_ = env.step(torch.from_numpy(action).to(env.device))
    renderer.close()
    env.close()
    fps = env.spec.control_hz / stride
    write_video(frames, out, fps)
    return {"video": str(out), "frames": len(frames), "fps": fps, "seconds": len(frames) / fps}
