"""Procedural RGB-D indoor scenes: the package's embedded default data (demo, tests, smoke training).

Rooms are axis-aligned boxes (floor at world z = 0, z up) furnished with box-built furniture and ray-cast
through a pinhole camera. The scenes are made so that *depth is necessary*:

* colour never decides the class: every surface (floor, walls, ceiling, furniture) draws its colour and
  texture from one shared palette, and shading depends only on surface orientation;
* classes differ by geometry: height above the floor, orientation and size (a table top and the floor
  can look identical in RGB);
* the camera height (0.8–1.6 m), pitch and roll are random, so gravity must be estimated.

Depth follows a Kinect-like sensor model: valid range 0.5–8 m, disparity quantisation (1/8 px, so the
step grows with z²), Gaussian noise with σ(z) = 1.2 mm + 1.9 mm·(z − 0.4 m)² (Nguyen et al. 2012), holes at
depth discontinuities and on "dark/specular" surfaces. Labels are NYUv2-40 ids (0 = unlabeled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame, metres_to_millimetres_u16

# NYUv2-40 ids of the classes the generator places.
WALL, FLOOR, CABINET, BED, CHAIR, SOFA, TABLE, CEILING, BOX = 1, 2, 3, 4, 5, 6, 7, 22, 29
CLASS_IDS: tuple[int, ...] = (WALL, FLOOR, CABINET, BED, CHAIR, SOFA, TABLE, CEILING, BOX)

# Sensor model constants.
RANGE_M = (0.5, 8.0)
BASELINE_FOCAL = 0.075 * 580.0  # Kinect baseline (m) × IR focal length (px): disparity = BF / z
DISPARITY_STEP = 1.0 / 8.0  # px
DISCONTINUITY_REL = 0.04  # a 3×3 neighbourhood spanning more than 4 % of z (+2 cm) is a discontinuity
DISCONTINUITY_ABS = 0.02  # m

# Reasons a depth pixel is invalid (``Scene.invalid_reason``).
VALID, OUT_OF_RANGE, DISCONTINUITY, SPECULAR = 0, 1, 2, 3


def depth_noise_sigma(z: np.ndarray) -> np.ndarray:
    """Axial noise standard deviation (m) of the Kinect-like model at depth ``z`` (m)."""
    return 0.0012 + 0.0019 * (z - 0.4) ** 2


def quantise_depth(z: np.ndarray) -> np.ndarray:
    """Round depth (m) to the nearest representable disparity step (the step in z grows with z²)."""
    disparity = BASELINE_FOCAL / z
    return (BASELINE_FOCAL / (np.round(disparity / DISPARITY_STEP) * DISPARITY_STEP)).astype(np.float32)


@dataclass(frozen=True)
class SceneObject:
    """An axis-aligned box in world coordinates (metres, z up, floor at z = 0)."""

    label: int
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    material: int
    specular: bool = False
    kind: str = ""  # e.g. "table_top", "table_leg", "chair_seat"


@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        frame: the RGB-D frame (rgb uint8 H×W×3, noisy depth in metres with NaN holes).
        labels: uint8 H×W NYUv2-40 ids (0 = unlabeled).
        depth_clean: float32 H×W noise-free depth (m) of every pixel (no holes, no range limits).
        gravity: unit 3-vector, the direction gravity pulls in the camera optical frame.
        camera_height: camera height above the floor (m).
        invalid_reason: uint8 H×W, why a depth pixel is NaN (VALID, OUT_OF_RANGE, DISCONTINUITY, SPECULAR).
        instance: int16 H×W index into ``objects`` (−1 = room surface: floor, wall or ceiling).
        objects: the furniture boxes, in world coordinates.
        world_from_camera: 4×4 rigid transform from the camera optical frame to the world frame.
        room: (lo, hi) corners of the room box in world coordinates (m).
    """

    frame: RGBDFrame
    labels: np.ndarray
    depth_clean: np.ndarray
    gravity: np.ndarray
    camera_height: float
    invalid_reason: np.ndarray
    instance: np.ndarray
    objects: list[SceneObject] = field(default_factory=list)
    world_from_camera: np.ndarray = field(default_factory=lambda: np.eye(4))
    room: tuple[np.ndarray, np.ndarray] = (np.zeros(3), np.zeros(3))


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix of ``angle`` radians about the unit ``axis`` (Rodrigues)."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


class SceneGenerator:
    """Deterministic generator of synthetic RGB-D rooms.

    Args:
        height, width: image size in pixels.
        seed: base seed; ``sample(i)`` is a pure function of (seed, i).
        intrinsics: camera intrinsics for ``width``×``height``; default: the NYUv2 Kinect colour camera scaled.
        num_materials: size of the shared colour/texture palette.
    """

    def __init__(
        self,
        height: int = 480,
        width: int = 640,
        seed: int = 0,
        intrinsics: CameraIntrinsics | None = None,
        num_materials: int = 10,
    ) -> None:
        self.height, self.width, self.seed = int(height), int(width), int(seed)
        self.intrinsics = intrinsics or CameraIntrinsics.nyu_kinect(self.width, self.height)
        if (self.intrinsics.width, self.intrinsics.height) != (self.width, self.height):
            raise ValueError(
                f"intrinsics are for {self.intrinsics.width}x{self.intrinsics.height}, generator renders "
                f"{self.width}x{self.height}"
            )
        self.num_materials = num_materials
        self._counter = 0
        k = self.intrinsics
        u = (np.arange(self.width, dtype=np.float32) - k.cx) / k.fx
        v = (np.arange(self.height, dtype=np.float32) - k.cy) / k.fy
        # Unnormalised camera rays with z = 1: the ray parameter t of a hit is its optical-frame depth z.
        self._rays = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((1, 1), np.float32)), axis=-1)
        self._ray_norm = np.linalg.norm(self._rays, axis=-1)
        # A bank of standard normals drawn once; each frame reads windows of it at random offsets (deterministic
        # by seed and index, and ~50× cheaper than drawing fresh normals per frame).
        self._normals = np.random.default_rng([self.seed, 2**31]).standard_normal(
            4 * self.height * self.width, np.float32
        )

    def _noise(self, rng: np.random.Generator, sigma: float) -> np.ndarray:
        """H×W zero-mean Gaussian noise with standard deviation ``sigma`` from the normal bank."""
        n = self.height * self.width
        start = int(rng.integers(0, self._normals.size - n))
        return self._normals[start : start + n].reshape(self.height, self.width) * np.float32(sigma)

    def sample(self, index: int | None = None) -> Scene:
        """Render scene ``index`` (default: the next one in sequence)."""
        if index is None:
            index, self._counter = self._counter, self._counter + 1
        rng = np.random.default_rng([self.seed, int(index)])
        materials = _make_materials(rng, self.num_materials)
        room_lo, room_hi, room_materials = _make_room(rng, self.num_materials)
        objects = _furnish(rng, room_lo, room_hi, self.num_materials)
        cam_pos, r_wc, cam_height = _place_camera(rng, room_lo, room_hi, objects)
        return self._render(rng, materials, room_lo, room_hi, room_materials, objects, cam_pos, r_wc, cam_height)

    # -- rendering -----------------------------------------------------------------------------------------
    def _render(self, rng, materials, room_lo, room_hi, room_materials, objects, cam_pos, r_wc, cam_height):
        h, w = self.height, self.width
        rx, ry = self._rays[..., 0], self._rays[..., 1]
        r = r_wc.astype(np.float32)
        d = [rx * r[i, 0] + ry * r[i, 1] + r[i, 2] for i in range(3)]  # world-frame ray directions, 3 × H×W
        with np.errstate(divide="ignore"):
            inv = [np.where(np.abs(c) > 1e-9, 1.0 / c, np.float32(1e9)).astype(np.float32) for c in d]
        o = cam_pos.astype(np.float32)

        # Room interior: the ray exits the room box through the nearest face.
        tx, ty, tz = (np.where(d[i] > 0, (room_hi[i] - o[i]) * inv[i], (room_lo[i] - o[i]) * inv[i]) for i in range(3))
        txy = np.minimum(tx, ty)
        t = np.minimum(txy, tz)
        axis = np.where(tz <= txy, 2, np.where(ty <= tx, 1, 0)).astype(np.int8)
        positive = np.where(axis == 2, d[2] > 0, np.where(axis == 1, d[1] > 0, d[0] > 0))
        inst = np.full((h, w), -1, np.int16)
        # Normal sign: the face's outward normal seen by the ray points against the ray.
        sign = np.where(positive, -1, 1).astype(np.int8)
        label = np.where(axis == 2, np.where(positive, CEILING, FLOOR), WALL).astype(np.uint8)
        # Room surfaces: 0..3 walls (x−, x+, y−, y+), 4 floor, 5 ceiling → materials.
        room_face = np.where(axis == 2, np.where(positive, 5, 4), axis * 2 + positive).astype(np.int16)

        for idx, obj in enumerate(objects):
            rows, cols = self._screen_window(obj, cam_pos, r_wc)
            if rows is None:
                continue
            sub_t, sub_inv = t[rows, cols], [c[rows, cols] for c in inv]
            lo, hi = np.asarray(obj.lo, np.float32), np.asarray(obj.hi, np.float32)
            t1 = [(lo[i] - o[i]) * sub_inv[i] for i in range(3)]
            t2 = [(hi[i] - o[i]) * sub_inv[i] for i in range(3)]
            tmin = np.stack([np.minimum(a, b) for a, b in zip(t1, t2)], 0)
            tmax = np.minimum.reduce([np.maximum(a, b) for a, b in zip(t1, t2)])
            hit_axis = np.argmax(tmin, axis=0)
            tnear = np.take_along_axis(tmin, hit_axis[None], axis=0)[0]
            hit = (tnear <= tmax) & (tnear > 0) & (tnear < sub_t)
            if not hit.any():
                continue
            ray_pos = np.choose(hit_axis, [c[rows, cols] for c in d]) > 0
            t[rows, cols] = np.where(hit, tnear, sub_t)
            axis[rows, cols] = np.where(hit, hit_axis, axis[rows, cols])
            sign[rows, cols] = np.where(hit, np.where(ray_pos, -1, 1), sign[rows, cols])
            label[rows, cols] = np.where(hit, obj.label, label[rows, cols])
            inst[rows, cols] = np.where(hit, idx, inst[rows, cols])

        depth_clean = t.astype(np.float32)  # rays have camera z = 1, so t is the optical-frame depth
        rgb = self._shade(rng, materials, room_materials, objects, inst, room_face, axis, sign, o, d, depth_clean)
        depth, reason = self._sense(rng, depth_clean, inst, objects)
        gravity = (r_wc.T @ np.array([0.0, 0.0, -1.0])).astype(np.float64)
        world_from_camera = np.eye(4)
        world_from_camera[:3, :3], world_from_camera[:3, 3] = r_wc, cam_pos
        frame = RGBDFrame(
            rgb=rgb, depth=depth, intrinsics=self.intrinsics, stamp_ns=0, frame_id="camera_color_optical_frame"
        )
        return Scene(
            frame=frame,
            labels=label,
            depth_clean=depth_clean,
            gravity=gravity / np.linalg.norm(gravity),
            camera_height=float(cam_height),
            invalid_reason=reason,
            instance=inst,
            objects=list(objects),
            world_from_camera=world_from_camera,
            room=(np.asarray(room_lo, float), np.asarray(room_hi, float)),
        )

    def _screen_window(self, obj: SceneObject, cam_pos: np.ndarray, r_wc: np.ndarray):
        """Pixel window (row slice, column slice) that can see ``obj``; the whole image if it straddles the camera."""
        corners = np.array(np.meshgrid(*zip(obj.lo, obj.hi), indexing="ij")).reshape(3, -1).T
        pc = (corners - cam_pos) @ r_wc  # camera frame
        if (pc[:, 2] <= 0).all():
            return None, None
        if (pc[:, 2] < 0.05).any():
            return slice(0, self.height), slice(0, self.width)
        k = self.intrinsics
        u = k.fx * pc[:, 0] / pc[:, 2] + k.cx
        v = k.fy * pc[:, 1] / pc[:, 2] + k.cy
        c0, c1 = int(max(np.floor(u.min()) - 1, 0)), int(min(np.ceil(u.max()) + 2, self.width))
        r0, r1 = int(max(np.floor(v.min()) - 1, 0)), int(min(np.ceil(v.max()) + 2, self.height))
        if c0 >= c1 or r0 >= r1:
            return None, None
        return slice(r0, r1), slice(c0, c1)

    def _shade(self, rng, materials, room_materials, objects, inst, room_face, axis, sign, o, d, depth):
        """Albedo from the shared palette × Lambertian shading from the surface orientation, plus sensor noise."""
        import cv2

        obj_mat = np.array([o.material for o in objects] + [0], np.int16)
        mat = np.where(inst >= 0, obj_mat[inst], np.asarray(room_materials, np.int16)[room_face])
        kinds = materials["kind"][mat]
        # Texture coordinates (in units of the material's period): the two world axes spanning the hit face.
        inv_period = (1.0 / materials["period"])[mat]
        px, py, pz = (o[i] + d[i] * depth for i in range(3))  # hit points, world frame
        a = np.where(axis == 0, py, px) * inv_period
        b = np.where(axis == 2, py, pz) * inv_period
        pattern = np.zeros(mat.shape, np.float32)
        for kind in (1, 2, 3):
            m = kinds == kind
            if not m.any():
                continue
            am, bm = a[m], b[m]
            if kind == 1:  # stripes
                pattern[m] = np.floor(am) % 2
            elif kind == 2:  # checker
                pattern[m] = (np.floor(am) + np.floor(bm)) % 2
            else:  # wood-like grain
                pattern[m] = 0.5 + 0.5 * np.sin(6.0 * am + 2.0 * np.sin(2.0 * bm))
        # Faces are axis-aligned: n·light and |n·view| come from the hit axis and the face's sign.
        light = rng.normal([0.3, -0.2, 1.0], 0.2)
        light = (light / np.linalg.norm(light)).astype(np.float32)
        lambert = np.clip(np.stack([-light, light]), 0, None)  # [sign<0 | sign>0, axis]
        ax = axis.astype(np.int64)
        facing = np.abs(np.where(ax == 0, d[0], np.where(ax == 1, d[1], d[2]))) / self._ray_norm
        shade = 0.35 + 0.45 * lambert[(sign > 0).astype(np.int64), ax] + 0.2 * facing
        gain = shade * (0.8 + 0.2 * pattern) * 255.0
        mat8 = mat.astype(np.uint8)
        channels = []
        for c in range(3):  # per channel on H×W planes: broadcasting over a trailing axis of 3 is slow in NumPy
            lut = np.zeros(256, np.float32)
            lut[: len(materials["colour"])] = materials["colour"][:, c]
            value = cv2.LUT(mat8, lut) * gain + self._noise(rng, 2.0)  # sensor noise σ = 2 grey levels
            channels.append(np.clip(value, 0, 255).astype(np.uint8))
        return cv2.merge(channels)

    def _sense(self, rng, depth_clean, inst, objects):
        """Kinect-like measurement of ``depth_clean``: noise, quantisation, range limits and holes."""
        import cv2

        reason = np.zeros(depth_clean.shape, np.uint8)
        reason[(depth_clean < RANGE_M[0]) | (depth_clean > RANGE_M[1])] = OUT_OF_RANGE
        kernel = np.ones((3, 3), np.uint8)
        span = cv2.dilate(depth_clean, kernel) - cv2.erode(depth_clean, kernel)
        reason[(reason == VALID) & (span > DISCONTINUITY_REL * depth_clean + DISCONTINUITY_ABS)] = DISCONTINUITY
        specular_ids = [i for i, o in enumerate(objects) if o.specular]
        if specular_ids:
            reason[(reason == VALID) & np.isin(inst, specular_ids)] = SPECULAR
        noisy = depth_clean + self._noise(rng, 1.0) * depth_noise_sigma(depth_clean)
        depth = quantise_depth(np.maximum(noisy, 1e-3))
        depth[reason != VALID] = np.nan
        return depth, reason


# -- scene layout -------------------------------------------------------------------------------------------
def _make_materials(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The shared palette: colour (RGB in [0, 1]), texture kind (0 plain, 1 stripes, 2 checker, 3 grain), period (m)."""
    import colorsys

    hsv = np.stack([rng.uniform(0, 1, n), rng.uniform(0.1, 0.7, n), rng.uniform(0.35, 0.95, n)], 1)
    colour = np.array([colorsys.hsv_to_rgb(*c) for c in hsv], np.float32)
    return {"colour": colour, "kind": rng.integers(0, 4, n), "period": rng.uniform(0.1, 0.5, n).astype(np.float32)}


def _make_room(rng: np.random.Generator, n_materials: int):
    size = np.array([rng.uniform(3.0, 6.0), rng.uniform(3.5, 7.0), rng.uniform(2.4, 3.0)])
    lo = np.array([-size[0] / 2, 0.0, 0.0])
    hi = lo + size
    return lo, hi, rng.integers(0, n_materials, 6)


def _box(label, x0, y0, z0, x1, y1, z1, material, specular=False, kind=""):
    return SceneObject(label, (x0, y0, z0), (x1, y1, z1), int(material), bool(specular), kind)


def _furnish(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, n_materials: int) -> list[SceneObject]:
    """Place furniture on the floor without 2-D overlap; wall-standing pieces (cabinet, bed, sofa) touch a wall."""
    objects: list[SceneObject] = []
    footprints: list[tuple[float, float, float, float]] = [(-0.6, lo[1], 0.6, lo[1] + 1.0)]  # keep the camera free

    def free(x0, y0, x1, y1, gap=0.05):
        inside = x0 >= lo[0] - 1e-9 and x1 <= hi[0] + 1e-9 and y0 >= lo[1] - 1e-9 and y1 <= hi[1] + 1e-9
        clear = all(
            x1 + gap <= a0 or x0 - gap >= a1 or y1 + gap <= b0 or y0 - gap >= b1 for a0, b0, a1, b1 in footprints
        )
        return inside and clear

    def place(sx, sy, against_wall):
        for _ in range(30):
            if against_wall:
                side = rng.integers(0, 3)  # left wall, right wall, back wall
                if side == 2:
                    x0, y0 = rng.uniform(lo[0], hi[0] - sx), hi[1] - sy
                else:
                    sx, sy = sy, sx
                    x0 = lo[0] if side == 0 else hi[0] - sx
                    y0 = rng.uniform(lo[1] + 1.0, hi[1] - sy)
            else:
                x0, y0 = rng.uniform(lo[0] + 0.2, hi[0] - sx - 0.2), rng.uniform(lo[1] + 1.2, hi[1] - sy - 0.2)
            if free(x0, y0, x0 + sx, y0 + sy):
                footprints.append((x0, y0, x0 + sx, y0 + sy))
                return x0, y0, sx, sy
        return None

    def mat():
        return rng.integers(0, n_materials)

    def spec():
        return rng.random() < 0.12

    counts = {"bed": rng.integers(0, 2), "sofa": rng.integers(0, 2), "cabinet": rng.integers(1, 4),
              "table": rng.integers(1, 4), "chair": rng.integers(1, 6), "box": rng.integers(1, 6)}  # fmt: skip
    for kind, count in counts.items():
        for _ in range(count):
            if kind == "table":
                spot = place(rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0), False)
                if spot:
                    x, y, sx, sy = spot
                    top, thick, leg, m, s = rng.uniform(0.7, 0.8), 0.04, 0.05, mat(), spec()
                    objects.append(_box(TABLE, x, y, top - thick, x + sx, y + sy, top, m, s, "table_top"))
                    for lx, ly in ((x, y), (x + sx - leg, y), (x, y + sy - leg), (x + sx - leg, y + sy - leg)):
                        objects.append(_box(TABLE, lx, ly, 0.0, lx + leg, ly + leg, top - thick, m, s, "table_leg"))
            elif kind == "chair":
                spot = place(0.45, 0.45, False)
                if spot:
                    x, y, sx, sy = spot
                    seat, m, s = rng.uniform(0.42, 0.48), mat(), spec()
                    objects.append(_box(CHAIR, x, y, seat - 0.05, x + sx, y + sy, seat, m, s, "chair_seat"))
                    objects.append(_box(CHAIR, x, y + sy - 0.05, seat, x + sx, y + sy, seat + 0.45, m, s, "chair_back"))
                    for lx, ly in ((x, y), (x + sx - 0.04, y), (x, y + sy - 0.04), (x + sx - 0.04, y + sy - 0.04)):
                        objects.append(_box(CHAIR, lx, ly, 0.0, lx + 0.04, ly + 0.04, seat - 0.05, m, s, "chair_leg"))
            elif kind == "cabinet":
                spot = place(rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.6), True)
                if spot:
                    x, y, sx, sy = spot
                    objects.append(
                        _box(CABINET, x, y, 0.0, x + sx, y + sy, rng.uniform(0.8, 2.0), mat(), spec(), "cabinet")
                    )
            elif kind == "bed":
                spot = place(rng.uniform(1.4, 1.8), rng.uniform(1.9, 2.1), True)
                if spot:
                    x, y, sx, sy = spot
                    objects.append(_box(BED, x, y, 0.0, x + sx, y + sy, rng.uniform(0.45, 0.6), mat(), spec(), "bed"))
            elif kind == "sofa":
                spot = place(rng.uniform(1.6, 2.2), rng.uniform(0.8, 0.95), True)
                if spot:
                    x, y, sx, sy = spot
                    m, s = mat(), spec()
                    objects.append(_box(SOFA, x, y, 0.0, x + sx, y + sy, 0.42, m, s, "sofa_seat"))
                    # Backrest on the side of the footprint facing the nearest wall.
                    dists = {"x0": x - lo[0], "x1": hi[0] - (x + sx), "y1": hi[1] - (y + sy)}
                    near = min(dists, key=dists.get)
                    bx0, by0, bx1, by1 = {
                        "x0": (x, y, x + 0.2, y + sy), "x1": (x + sx - 0.2, y, x + sx, y + sy),
                        "y1": (x, y + sy - 0.2, x + sx, y + sy),
                    }[near]  # fmt: skip
                    objects.append(_box(SOFA, bx0, by0, 0.42, bx1, by1, 0.85, m, s, "sofa_back"))
            else:
                spot = place(*(rng.uniform(0.2, 0.5, 2)), False)
                if spot:
                    x, y, sx, sy = spot
                    objects.append(_box(BOX, x, y, 0.0, x + sx, y + sy, rng.uniform(0.2, 0.5), mat(), spec(), "box"))
    return objects


def _place_camera(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, objects: list[SceneObject]):
    """Camera near the front wall, height 0.8–1.6 m, looking into the room with random yaw, pitch and roll.

    Returns (position (3,), world-from-camera rotation 3×3, height).
    """
    height = rng.uniform(0.8, 1.6)
    pos = np.array([rng.uniform(-0.4, 0.4), lo[1] + rng.uniform(0.3, 0.8), height])
    # Level camera looking along world +y: optical x → world x, optical y → world −z, optical z → world +y.
    base = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    yaw, pitch, roll = rng.uniform(-0.5, 0.5), np.deg2rad(rng.uniform(-35, 5)), np.deg2rad(rng.uniform(-10, 10))
    r = _rotation(np.array([0.0, 0.0, 1.0]), yaw) @ base
    r = r @ _rotation(np.array([1.0, 0.0, 0.0]), pitch) @ _rotation(np.array([0.0, 0.0, 1.0]), roll)
    return pos, r, height


# -- dataset on disk ------------------------------------------------------------------------------------------
def write_dataset(
    root: str | Path, n_train: int = 40, n_test: int = 10, size: tuple[int, int] = (480, 640), seed: int = 0
) -> Path:
    """Write synthetic scenes in the common NYUDepthv2 folder layout.

    Layout: ``RGB/<i>.png`` (8-bit colour), ``Depth/<i>.png`` (16-bit millimetres, 0 = invalid),
    ``Label/<i>.png`` (8-bit NYUv2-40 ids, 0 = unlabeled), ``train.txt`` / ``test.txt`` (one ``RGB/<i>.png
    Label/<i>.png`` line per image, tab-separated, 0-based names), ``intrinsics.yaml`` (fx, fy, cx, cy, width,
    height) and ``poses.yaml`` (per image: gravity in the camera frame and camera height, m).

    Args:
        size: (height, width) in pixels.
    """
    import cv2
    import yaml
    from tqdm import tqdm

    root = Path(root)
    for sub in ("RGB", "Depth", "Label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    gen = SceneGenerator(height=size[0], width=size[1], seed=seed)
    poses = {}
    names = [str(i) for i in range(n_train + n_test)]
    for i, name in enumerate(tqdm(names, desc="synthetic scenes", unit="frame", leave=False)):
        scene = gen.sample(i)
        depth_mm = metres_to_millimetres_u16(scene.frame.depth)
        cv2.imwrite(str(root / "RGB" / f"{name}.png"), cv2.cvtColor(scene.frame.rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "Depth" / f"{name}.png"), depth_mm)
        cv2.imwrite(str(root / "Label" / f"{name}.png"), scene.labels)
        poses[name] = {"gravity": [float(g) for g in scene.gravity], "camera_height": scene.camera_height}
    for split, part in (("train", names[:n_train]), ("test", names[n_train:])):
        (root / f"{split}.txt").write_text("".join(f"RGB/{n}.png\tLabel/{n}.png\n" for n in part))
    k = gen.intrinsics
    intr = {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy, "width": k.width, "height": k.height}
    (root / "intrinsics.yaml").write_text(yaml.safe_dump(intr, sort_keys=False))
    (root / "poses.yaml").write_text(yaml.safe_dump(poses, sort_keys=False))
    return root
