"""A KUKA iiwa arm (pybullet_data) reaching for and pushing a cube, rendered with pybullet's TinyRenderer.

Usage:
    from engine.datagen.sources import generate_robot
    csv = generate_robot("data/robot", 30, num_frames=32, size=64, fps=10, seed=0)
    # data/robot/robot/000007.mp4 + 000007.actions.npy (float32 [T, 3]) + 000007.states.npy (float32 [T, 10])
    python -m engine.datagen robot --output data/robot --num 30 [--frames 32 --size 64 --fps 10 --views 2]

Each episode: a fresh world (plane, arm, an 8 cm red cube at a random spot), the arm starting from a
jittered home pose, a camera with a random yaw. Per frame the controller issues an end-effector
displacement (the action, metres, |a| <= 3 cm per axis), solved by inverse kinematics and tracked by
the joint motors for 240/fps physics steps of 1/240 s. Row t of the arrays belongs to frame t: the
state seen in frame t and the action taken after it. Policies (the label is the policy's index):
    random  a smoothed random walk of the end effector inside the workspace
    reach   move to 10 cm above the cube
    push    go behind the cube (seen from a random push direction), lower, push it along that direction
    explore move to a random waypoint in the workspace, then the next one (covers the workspace evenly:
            the data for learning what an action does anywhere, e.g. for reaching goals by planning)
states: end-effector position (3) and orientation quaternion xyzw (4), cube position (3).
With `views` V > 1 each episode is filmed by V cameras at once, camera k at the first one's yaw + k * 90
degrees (the same height and distance): a move along one camera's ray crosses the next one's image. Each
view is written as its own trajectory (episode i, camera k: video i * V + k, the same actions and states),
so a world model trains on every view as the reference's camera_views draw does, and a planner can score
its goal in all of them (planning.views). Beside the world-frame arrays each video has them in its own
camera's frame (`to_camera`: positions and displacements rotated into the camera's axes, the orientation
turned), NNNNNN.actions_camera.npy and NNNNNN.states_camera.npy, read under data.camera_frame: true (the
reference's DROID loader's camera_frame), so an action moves the picture alike in every view.
Frames are written lossless by default (codec h264rgb): a planner sees the renderer's frames, and a lossy
codec's chroma subsampling alone changes these frames as much as one step of the arm does.
Episode i depends only on (seed, i).
"""
from __future__ import annotations

import numpy as np

from .common import write_episodes

POLICIES = ("random", "reach", "push", "explore")
DEFAULT_POLICIES = POLICIES[:3]
EE_LINK = 6  # lbr_iiwa_link_7
HOME_Q = np.array([0.0, 0.5, 0.0, -1.3, 0.0, 1.3, 0.0])
WORKSPACE_LO = np.array([0.30, -0.35, 0.04])
WORKSPACE_HI = np.array([0.75, 0.35, 0.60])
MAX_STEP = 0.03
VIEW_YAW_STEP = 90.0   # degrees between the cameras of a multi-view episode


class Arm:
    """One pybullet client (DIRECT: no window) holding the scene of the current episode."""

    def __init__(self, views: int = 1):
        import pybullet as pb
        import pybullet_data

        if views < 1:
            raise ValueError(f"views: at least one camera, got {views}")
        self.views = int(views)
        self.pb = pb
        self.cid = pb.connect(pb.DIRECT)
        self.data_path = pybullet_data.getDataPath()

    def reset(self, rng: np.random.Generator):
        pb, c = self.pb, self.cid
        pb.resetSimulation(physicsClientId=c)
        pb.setAdditionalSearchPath(self.data_path, physicsClientId=c)
        pb.setGravity(0, 0, -9.8, physicsClientId=c)
        pb.loadURDF("plane.urdf", physicsClientId=c)
        self.arm = pb.loadURDF("kuka_iiwa/model.urdf", [0, 0, 0], useFixedBase=True, physicsClientId=c)
        cube_xy = [rng.uniform(0.45, 0.65), rng.uniform(-0.2, 0.2)]
        self.cube = pb.loadURDF("cube_small.urdf", [*cube_xy, 0.04], globalScaling=1.6, physicsClientId=c)
        pb.changeVisualShape(self.cube, -1, rgbaColor=[0.9, 0.15, 0.1, 1], physicsClientId=c)  # visible at 64 px
        q = HOME_Q + rng.uniform(-0.15, 0.15, 7)
        for j in range(7):
            pb.resetJointState(self.arm, j, q[j], physicsClientId=c)
        self.down = pb.getQuaternionFromEuler([0, np.pi, 0])  # tool pointing at the floor
        yaw = float(rng.uniform(35, 75))
        self.cameras = [pb.computeViewMatrixFromYawPitchRoll([0.45, 0, 0.3], 1.25, yaw + k * VIEW_YAW_STEP, -30, 0, 2)
                        for k in range(self.views)]
        self.view = self.cameras[0]   # camera 0: the one a one-camera scene has
        self.proj = pb.computeProjectionMatrixFOV(50, 1.0, 0.05, 5)
        self.target = np.clip(self.ee()[0], WORKSPACE_LO, WORKSPACE_HI)

    def ee(self):
        s = self.pb.getLinkState(self.arm, EE_LINK, computeForwardKinematics=True, physicsClientId=self.cid)
        return np.asarray(s[4]), np.asarray(s[5])

    def cube_pos(self):
        return np.asarray(self.pb.getBasePositionAndOrientation(self.cube, physicsClientId=self.cid)[0])

    def state(self) -> np.ndarray:
        """float32 [10]: end-effector xyz, its quaternion xyzw, cube xyz (the episodes' `states` rows)."""
        pos, orn = self.ee()
        return np.concatenate([pos, orn, self.cube_pos()]).astype(np.float32)

    def render(self, size: int) -> np.ndarray:
        """uint8 RGB [size, size, 3] from the one camera; with several, every camera's: [V, size, size, 3]."""
        frames = []
        for view in self.cameras:
            w, h, rgba, _, _ = self.pb.getCameraImage(size, size, view, self.proj, renderer=self.pb.ER_TINY_RENDERER,
                                                      physicsClientId=self.cid)
            frames.append(np.asarray(rgba, np.uint8).reshape(h, w, 4)[..., :3])
        return frames[0] if self.views == 1 else np.stack(frames)

    def act(self, delta, substeps: int):
        pb, c = self.pb, self.cid
        self.target = np.clip(self.target + delta, WORKSPACE_LO, WORKSPACE_HI)
        q = pb.calculateInverseKinematics(self.arm, EE_LINK, self.target.tolist(), self.down, maxNumIterations=50,
                                          physicsClientId=c)
        pb.setJointMotorControlArray(self.arm, list(range(7)), pb.POSITION_CONTROL, targetPositions=q[:7],
                                     forces=[300.0] * 7, physicsClientId=c)
        for _ in range(substeps):
            pb.stepSimulation(physicsClientId=c)

    def close(self):
        self.pb.disconnect(physicsClientId=self.cid)


def camera_matrix(view) -> np.ndarray:
    """float64 [4, 4]: the world -> camera rigid transform of a pybullet view matrix (16 floats, column-major;
    rows 0-2 of the rotation are the camera's right, up and backward axes in world coordinates)."""
    return np.asarray(view, dtype=np.float64).reshape(4, 4).T


def _quat_from_matrix(m: np.ndarray) -> np.ndarray:
    """The unit quaternion (xyzw) of rotation matrix m (Shepperd's method: from the largest of w, x, y, z, so
    no division by a small number)."""
    tr = np.trace(m)
    cases = [tr, m[0, 0], m[1, 1], m[2, 2]]
    k = int(np.argmax(cases))
    if k == 0:
        w = np.sqrt(1.0 + tr) / 2
        q = [(m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w), (m[1, 0] - m[0, 1]) / (4 * w), w]
    else:
        i, j, l = k - 1, k % 3, (k + 1) % 3
        v = np.sqrt(1.0 + m[i, i] - m[j, j] - m[l, l]) / 2
        q = np.zeros(4)
        q[i], q[j], q[l] = v, (m[j, i] + m[i, j]) / (4 * v), (m[l, i] + m[i, l]) / (4 * v)
        q[3] = (m[l, j] - m[j, l]) / (4 * v)
    return np.asarray(q)


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of xyzw quaternions (b broadcast over leading axes): rotation b, then a."""
    ax, ay, az, aw = a
    bx, by, bz, bw = np.moveaxis(b, -1, 0)
    return np.stack([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz], axis=-1)


def to_camera(M: np.ndarray, actions_TA: np.ndarray, states_TS: np.ndarray):
    """(actions, states) of the arm in the frame of the camera whose world -> camera transform is M: the
    displacements (actions) rotated, the end-effector and cube positions moved (R p + t), the end effector's
    orientation turned (q_R * q). Float32, shapes kept."""
    R, t = M[:3, :3], M[:3, 3]
    a = np.asarray(actions_TA, dtype=np.float64) @ R.T
    s = np.array(states_TS, dtype=np.float64)
    for lo in (0, 7):   # end effector, cube
        s[..., lo:lo + 3] = s[..., lo:lo + 3] @ R.T + t
    s[..., 3:7] = _quat_mul(_quat_from_matrix(R), s[..., 3:7])
    return a.astype(np.float32), s.astype(np.float32)


def _toward(src, dst, noise, rng):
    return np.clip(dst - src + rng.normal(0, noise, 3), -MAX_STEP, MAX_STEP)


def run_episode(arm: Arm, policy: str, rng: np.random.Generator, num_frames: int = 32, size: int = 64,
                fps: int = 10):
    """(uint8 frames [T, size, size, 3] (several cameras: [T, V, size, size, 3]), float32 actions [T, 3],
    float32 states [T, 10]) of one episode."""
    if policy not in POLICIES:
        raise ValueError(f"unknown robot policy {policy!r}; expected one of {POLICIES}")
    arm.reset(rng)
    substeps = max(1, round(240 / fps))
    frames, actions, states = [], [], []
    vel = np.zeros(3)
    push_dir = rng.normal(size=2)
    push_dir = np.append(push_dir / np.linalg.norm(push_dir), 0.0)
    phase = 0
    waypoint = rng.uniform(WORKSPACE_LO, WORKSPACE_HI)
    for t in range(num_frames):
        cube = arm.cube_pos()
        frames.append(arm.render(size))
        states.append(arm.state())
        if policy == "random":
            vel = 0.8 * vel + 0.2 * rng.normal(0, 0.05, 3)
            a = np.clip(vel, -MAX_STEP, MAX_STEP)
        elif policy == "reach":
            a = _toward(arm.target, cube + [0, 0, 0.10], 0.002, rng)
        elif policy == "explore":
            if np.linalg.norm(waypoint - arm.target) < 0.02:
                waypoint = rng.uniform(WORKSPACE_LO, WORKSPACE_HI)
            a = _toward(arm.target, waypoint, 0.01, rng)
        else:  # push: above the start point, down, then along push_dir
            start = cube - 0.10 * push_dir
            if phase == 0:
                goal = start + [0, 0, 0.12]
            elif phase == 1:
                goal = start + [0, 0, 0.05]
            else:
                goal = arm.target + 0.03 * push_dir
                goal[2] = 0.05
            a = _toward(arm.target, goal, 0.001, rng)
            if phase < 2 and np.linalg.norm(goal - arm.target) < 0.015:
                phase += 1
        actions.append(a)
        arm.act(a, substeps)
    return np.stack(frames), np.asarray(actions, np.float32), np.asarray(states, np.float32)


def generate_robot(out_dir, num_videos: int, *, num_frames: int = 32, size: int = 64, fps: int = 10,
                   codec: str = "h264rgb", seed: int = 0, policies=DEFAULT_POLICIES, name: str = "robot",
                   views: int = 1, progress: bool = False):
    """Write num_videos episodes (policy i % len(policies)), each filmed by `views` cameras (num_videos * views
    videos); return the index CSV path."""
    policies = tuple(policies)
    meta = {"source": "pybullet kuka_iiwa", "classes": list(policies), "num_frames": num_frames, "size": size,
            "seed": seed, "views": views, "view_yaw_step": VIEW_YAW_STEP,
            "arrays": {"actions": "float32 [T, 3] end-effector displacement (m)",
                       "states": "float32 [T, 10] end-effector xyz, quaternion xyzw, cube xyz",
                       "actions_camera": "actions in the video's camera frame (x right, y up, z backward)",
                       "states_camera": "states in the video's camera frame"}}
    arm = Arm(views)

    def episode(i):
        policy = policies[i % len(policies)]
        frames, actions, states = run_episode(arm, policy, np.random.default_rng([seed, i]), num_frames, size, fps)
        per_view = [frames] if views == 1 else list(frames.swapaxes(0, 1))
        videos = []
        for frames_k, view in zip(per_view, arm.cameras):
            a_cam, s_cam = to_camera(camera_matrix(view), actions, states)
            videos.append((frames_k, POLICIES.index(policy), actions, states,
                           {"actions_camera": a_cam, "states_camera": s_cam}))
        return videos

    return write_episodes(out_dir, name, num_videos, episode, size=size, codec=codec, fps=fps, meta=meta,
                          progress=progress, close=arm.close)
