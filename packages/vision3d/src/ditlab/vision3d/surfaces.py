"""Surfaces and pictures of point clouds for the apps: meshes reconstructed from shape clouds (`reconstruct`,
written by `write_mesh` for Gradio's Model3D and other viewers), interactive 3D scatter figures (`point_figure`)
and the LiDAR tab's rasters (`bev_image`, `range_view_image`).

Conventions:

- Shape clouds are in the canonical frame of `ditlab.vision3d.data` (y up, front towards -z); LiDAR scans are in
  the sensor frame (metres, x forward, y left, z up) with one intensity per point.
- `reconstruct` never returns an empty mesh: the chosen method, then the other one, then the convex hull; it says
  which one it used and why (`Surface`), and raises `InputError` only when no surface exists at all.
- Rasters are (H, W, 3) uint8 RGB with empty pixels black; values are drawn with one colour map whose lightness
  rises with the value (dark purple, blue, cyan, green, yellow, pale yellow: turbo's hues without its dark red
  end), so "higher", "more intense" and "nearer" all read as brighter, and no drawn pixel is black.

    from ditlab.vision3d.surfaces import reconstruct, write_mesh
    surface = reconstruct(shape_points("chair", 0))      # Surface(mesh, method_used="poisson", fallback=False, ...)
    write_mesh("chair.glb", surface.mesh)
"""

from __future__ import annotations

import base64
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ditlab.core.errors import InputError
from ditlab.core.files import atomic_write
from ditlab.vision3d.data import open3d_module

METHODS = ("poisson", "ball_pivoting")
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl")
MAX_DEPTH = 12
"""Deepest Poisson octree accepted: memory grows about 4x a level, and 12 already takes gigabytes."""
MAX_RASTER = 4096
"""Largest bird's-eye-view side in pixels."""
GREY = (0.7, 0.7, 0.7)
_FLAT = 1e-6
"""A cloud whose second (third) principal spread is below this fraction of the first is a line (a plane)."""

_STOPS = np.linspace(0.0, 1.0, 6)
_ANCHORS = np.array([[0.19, 0.07, 0.35], [0.15, 0.35, 0.85], [0.10, 0.70, 0.85],
                     [0.40, 0.85, 0.35], [0.95, 0.85, 0.20], [1.00, 0.97, 0.80]])
COLORSCALE = [[float(t), "rgb({:.0f},{:.0f},{:.0f})".format(*(255 * c))] for t, c in zip(_STOPS, _ANCHORS, strict=True)]
"""The colour map as a plotly colour scale, so the 3D views and the rasters agree."""


@dataclass(frozen=True)
class Surface:
    """A reconstructed mesh, the method that built it ("poisson", "ball_pivoting" or "convex_hull"), whether that
    was a fallback from the method asked for, and a note saying what failed (empty when nothing did)."""

    mesh: Any  # open3d.geometry.TriangleMesh
    method_used: str
    fallback: bool
    note: str


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

def _check_points(points, min_n: int = 1) -> np.ndarray:
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"points must be numbers, an array (N, 3); got {type(points).__name__} ({e})") from e
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points must be an array (N, 3), got shape {pts.shape}")
    if len(pts) < min_n:
        raise InputError(f"need at least {min_n} points, got {len(pts)}")
    if not np.isfinite(pts).all():
        raise InputError(f"points must be finite; {int((~np.isfinite(pts)).any(1).sum())} contain NaN or inf")
    return pts


def _check_values(values, n: int, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (n,):
        raise InputError(f"{what} must be one value per point, shape ({n},), got shape {v.shape}")
    if not np.isfinite(v).all():
        raise InputError(f"{what} must be finite; {int((~np.isfinite(v)).sum())} are NaN or inf")
    return v


def _colormap(v: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours of values in [0, 1] (clipped)."""
    v = np.clip(v, 0.0, 1.0)
    rgb = np.stack([np.interp(v, _STOPS, _ANCHORS[:, c]) for c in range(3)], axis=-1)
    return np.round(255 * rgb).astype(np.uint8)


def _unit(v: np.ndarray) -> np.ndarray:
    """v scaled so its 1st..99th percentiles span [0, 1] (robust to a few outliers; constant values give 0.5)."""
    lo, hi = np.percentile(v, [1, 99]) if len(v) else (0.0, 0.0)
    return np.full_like(v, 0.5) if hi <= lo else (v - lo) / (hi - lo)


# ----------------------------------------------------------------------------------------------
# Reconstruction
# ----------------------------------------------------------------------------------------------

def _oriented_cloud(pts: np.ndarray, flat_normal: np.ndarray | None):
    """An open3d cloud with outward normals, and its mean nearest-neighbour spacing.

    Normals come from the ~20 nearest neighbours (within 3 spacings). A plane's normals are aligned with its
    normal; other clouds are oriented by propagation over the neighbour graph (consistent across thin parts, where
    "away from the centroid" is wrong on one side), falling back to "away from the centroid" when qhull refuses
    the graph; then all are flipped if most point inwards."""
    o3d = open3d_module()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    nn = np.asarray(pcd.compute_nearest_neighbor_distance())
    spacing = float(nn.mean())
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3 * spacing, max_nn=20))
    centre = pts.mean(0)
    if flat_normal is not None:
        pcd.orient_normals_to_align_with_direction(flat_normal)
        return pcd, spacing
    try:
        pcd.orient_normals_consistent_tangent_plane(15)
    except RuntimeError:  # qhull: co-spherical or too few neighbours
        pcd.orient_normals_towards_camera_location(centre)  # inwards, flipped below
    normals = np.asarray(pcd.normals)
    if np.sum(normals * (pts - centre)) < 0:
        pcd.normals = o3d.utility.Vector3dVector(-normals)
    return pcd, spacing


def _poisson(pcd, depth: int, density_quantile: float):
    """Screened Poisson, without its least supported vertices (the bubbles it invents far from the points),
    cropped to the cloud's bounding box enlarged by 5% of its longest side."""
    o3d = open3d_module()
    mesh, densities = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=depth)
    mesh.vertex_colors = o3d.utility.Vector3dVector()  # all black, interpolated from a cloud without colours
    d = np.asarray(densities)
    if len(d):
        mesh.remove_vertices_by_mask(d < np.quantile(d, density_quantile))
    lo, hi = pcd.get_min_bound(), pcd.get_max_bound()
    pad = 0.05 * float(np.max(hi - lo))
    return mesh.crop(o3d.geometry.AxisAlignedBoundingBox(lo - pad, hi + pad))


def _ball_pivoting(pcd, spacing: float):
    """Ball pivoting with balls of 1, 2, 4 and 8 mean point spacings (small ones for detail, large ones to close
    the gaps of uneven sampling)."""
    o3d = open3d_module()
    radii = o3d.utility.DoubleVector([spacing * k for k in (1, 2, 4, 8)])
    return o3d.geometry.TriangleMesh.create_from_point_cloud_ball_pivoting(pcd, radii)


def reconstruct(points, method: str = "poisson", depth: int = 8, density_quantile: float = 0.05,
                min_triangles: int = 50) -> Surface:
    """A triangle mesh of the surface the points (N, 3) were sampled from (at least 4 distinct points).

    Fallback chain: `method` ("poisson" or "ball_pivoting"), then the other method, then the convex hull. A method
    fails when open3d raises or its mesh has fewer than `min_triangles` triangles (a surface through N well-spread
    points has about 2N); the convex hull is taken as it comes. `Surface` says which one was used and why. Raises
    `InputError` for bad input and when not even the hull exists (collinear points, or coplanar ones that both
    methods failed on). `depth` is Poisson's octree depth (2^depth cells a side); `density_quantile` the fraction
    of least supported Poisson vertices removed."""
    pts = _check_points(points, min_n=4)
    if method not in METHODS:
        raise InputError(f"unknown surface method {method!r}; expected one of {METHODS}")
    if not 1 <= depth <= MAX_DEPTH:
        raise InputError(f"Poisson depth must lie in [1, {MAX_DEPTH}], got {depth}")
    if not 0 <= density_quantile < 1:
        raise InputError(f"density quantile must lie in [0, 1), got {density_quantile}")
    if min_triangles < 1:
        raise InputError(f"min_triangles must be at least 1, got {min_triangles}")
    n = len(pts)
    pts = np.unique(pts, axis=0)  # duplicates have no neighbour spacing and no normal of their own
    if len(pts) < 4:
        raise InputError(f"cannot build a surface from {n} points: only {len(pts)} are distinct; expected at least 4")
    _, spread, axes = np.linalg.svd(pts - pts.mean(0), full_matrices=False)
    if spread[1] <= _FLAT * spread[0]:
        raise InputError(f"cannot build a surface from {n} points: they are collinear or coincide; "
                         "expected points spread over a surface")
    o3d = open3d_module()
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        pcd, spacing = _oriented_cloud(pts, axes[2] if spread[2] <= _FLAT * spread[0] else None)
        build = {"poisson": lambda: _poisson(pcd, depth, density_quantile),
                 "ball_pivoting": lambda: _ball_pivoting(pcd, spacing)}
        failures = []
        for name in (method, *(m for m in METHODS if m != method)):
            try:
                mesh = build[name]()
            except RuntimeError as e:
                failures.append(f"{name} failed ({_first_line(e)})")
                continue
            if len(mesh.triangles) >= min_triangles:
                note = f"{'; '.join(failures)}; used {name} instead" if failures else ""
                return Surface(mesh, name, bool(failures), note)
            failures.append(f"{name} gave {len(mesh.triangles)} triangles (fewer than {min_triangles})")
        try:
            hull, _ = pcd.compute_convex_hull()
        except RuntimeError as e:
            raise InputError(f"cannot build a surface from {n} points: {'; '.join(failures)}; "
                             f"the convex hull failed too ({_first_line(e)})") from e
    return Surface(hull, "convex_hull", True, f"{'; '.join(failures)}; used the convex hull instead")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ----------------------------------------------------------------------------------------------
# Mesh files
# ----------------------------------------------------------------------------------------------

def _gltf_bytes(mesh, binary: bool) -> bytes:
    """glTF 2.0 of a mesh with vertex normals and colours: a .glb (JSON and BIN chunks) or a .gltf (JSON with the
    buffer as a data URI). open3d's own writer puts the buffer in base64 even in a .glb, gives the index accessor
    a wrong `max` and no material (so viewers draw it fully metallic); this one is plain and validator-clean, with
    a matte, double-sided material (ball pivoting's triangles are not consistently wound)."""
    arrays = [np.asarray(mesh.triangles, np.uint32).ravel(), np.asarray(mesh.vertices, np.float32),
              np.asarray(mesh.vertex_normals, np.float32), np.asarray(mesh.vertex_colors, np.float32)]
    blob = b"".join(a.tobytes() for a in arrays)  # 4-byte elements: every view is aligned, no padding needed
    offsets = np.cumsum([0] + [a.nbytes for a in arrays])
    views = [{"buffer": 0, "byteOffset": int(o), "byteLength": a.nbytes, "target": 34963 if i == 0 else 34962}
             for i, (o, a) in enumerate(zip(offsets[:-1], arrays, strict=True))]
    accessors = [{"bufferView": 0, "componentType": 5125, "count": arrays[0].size, "type": "SCALAR"}]
    accessors += [{"bufferView": i, "componentType": 5126, "count": len(a), "type": "VEC3"} for i, a in
                  enumerate(arrays[1:], 1)]
    accessors[1].update(min=arrays[1].min(0).tolist(), max=arrays[1].max(0).tolist())  # required for POSITION
    gltf = {
        "asset": {"version": "2.0", "generator": "ditlab.vision3d"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 1, "NORMAL": 2, "COLOR_0": 3}, "indices": 0,
                                    "material": 0, "mode": 4}]}],
        "materials": [{"pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 0.9},
                       "doubleSided": True}],
        "accessors": accessors, "bufferViews": views, "buffers": [{"byteLength": len(blob)}],
    }
    if not binary:
        gltf["buffers"][0]["uri"] = "data:application/octet-stream;base64," + base64.b64encode(blob).decode()
        return json.dumps(gltf).encode()
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    return (struct.pack("<4sII", b"glTF", 2, 28 + len(js) + len(blob)) + struct.pack("<I4s", len(js), b"JSON") + js
            + struct.pack("<I4s", len(blob), b"BIN\0") + blob)


def _write_o3d(tmp: Path, mesh, suffix: str) -> None:
    """open3d's writer picks the format from the extension: write `mesh<suffix>` in a private folder next to
    `tmp`, then move it onto `tmp` (the folder and anything half-written in it go either way)."""
    o3d = open3d_module()
    with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".mesh-") as d:
        out = Path(d) / f"mesh{suffix}"
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            ok = o3d.io.write_triangle_mesh(str(out), mesh)
        if not ok:
            raise OSError(f"open3d could not write a {suffix} mesh")
        os.replace(out, tmp)


def write_mesh(path: str | Path, mesh) -> Path:
    """Write an open3d TriangleMesh atomically as .glb, .gltf, .obj, .ply or .stl (from the suffix), with vertex
    normals and, when it has no vertex colours, a uniform grey, so viewers shade it. The caller's mesh is not
    changed. Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(f"unknown mesh file type {path.name!r}; expected a name ending in one of {MESH_SUFFIXES}")
    if len(mesh.triangles) == 0:
        raise InputError("cannot write an empty mesh (it has no triangles)")
    o3d = open3d_module()
    shaded = o3d.geometry.TriangleMesh(mesh)
    shaded.remove_unreferenced_vertices()  # they would get zero normals, which glTF forbids
    shaded.compute_vertex_normals()
    if not shaded.has_vertex_colors():
        shaded.paint_uniform_color(GREY)
    if suffix in (".glb", ".gltf"):
        return atomic_write(path, lambda tmp: tmp.write_bytes(_gltf_bytes(shaded, binary=suffix == ".glb")))
    return atomic_write(path, lambda tmp: _write_o3d(tmp, shaded, suffix))


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------

def point_figure(points, colors=None, size: float = 2.0, title: str | None = None, max_points: int = 200_000,
                 up: str = "y"):
    """An interactive plotly 3D scatter of the points (N, 3), coloured by height (the `up` axis: "y" for shapes,
    "z" for LiDAR scans) or by `colors`, one value per point (then with a colour bar). Clouds of more than
    `max_points` points are drawn from a seeded subsample (the same points every time). Equal axis scales, no
    axes, the camera upright and in front (shapes face -z)."""
    import plotly.graph_objects as go

    pts = _check_points(points)
    if up not in ("y", "z"):
        raise InputError(f"up must be 'y' (shapes) or 'z' (LiDAR scans), got {up!r}")
    if max_points < 1:
        raise InputError(f"max_points must be at least 1, got {max_points}")
    values = pts[:, "xyz".index(up)] if colors is None else _check_values(colors, len(pts), "colors")
    if len(pts) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(len(pts), max_points, replace=False))
        pts, values = pts[keep], values[keep]
    pts = pts.astype(np.float32)  # half the bytes sent to the browser
    marker = {"size": size, "color": values.astype(np.float32), "colorscale": COLORSCALE,
              "showscale": colors is not None}
    trace = go.Scatter3d(x=pts[:, 0], y=pts[:, 1], z=pts[:, 2], mode="markers", marker=marker)
    hidden = {"visible": False}
    eye = {"x": 1.2, "y": 0.8, "z": -1.6} if up == "y" else {"x": -1.6, "y": 1.2, "z": 0.8}
    camera = {"up": {"x": 0, "y": 0, "z": 0, up: 1}, "eye": eye}
    fig = go.Figure(trace)
    fig.update_layout(title=title, margin={"l": 0, "r": 0, "t": 40 if title else 0, "b": 0}, showlegend=False,
                      scene={"aspectmode": "data", "xaxis": hidden, "yaxis": hidden, "zaxis": hidden,
                             "camera": camera})
    return fig


def bev_image(points, intensity=None, extent: float = 50.0, cell: float = 0.2) -> np.ndarray:
    """(H, W, 3) uint8 bird's-eye view of a LiDAR scan (N, 3) in the sensor frame: the square |x|, |y| < `extent`
    metres in cells of `cell` metres, x forward up the image, y left to the left, the sensor at the centre. A cell
    shows its highest point's height, or with `intensity` (N,) its largest intensity, scaled over the 1st..99th
    percentile of the scan's values in view; empty cells are black."""
    pts = _check_points(points, min_n=0)
    if not (extent > 0 and cell > 0):
        raise InputError(f"extent and cell must be positive metres, got extent={extent}, cell={cell}")
    side = int(round(2 * extent / cell))
    if not 1 <= side <= MAX_RASTER:
        raise InputError(f"a bird's-eye view of extent {extent} m in {cell} m cells is {side} pixels a side; "
                         f"expected 1 to {MAX_RASTER}")
    values = pts[:, 2] if intensity is None else _check_values(intensity, len(pts), "intensity")
    row = np.floor((extent - pts[:, 0]) / cell).astype(np.int64)
    col = np.floor((extent - pts[:, 1]) / cell).astype(np.int64)
    inside = (row >= 0) & (row < side) & (col >= 0) & (col < side)
    grid = np.full(side * side, -np.inf)
    np.maximum.at(grid, row[inside] * side + col[inside], _unit(values[inside]))
    image = np.zeros((side * side, 3), np.uint8)
    filled = np.isfinite(grid)
    image[filled] = _colormap(grid[filled])
    return image.reshape(side, side, 3)


def range_view_image(depth, max_depth: float = 80.0) -> np.ndarray:
    """(H, W, 3) uint8 picture of a range image (H, W) in metres: nearer is brighter, `max_depth` and beyond is
    the darkest colour, 0 (no return) is black."""
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim != 2:
        raise InputError(f"a range image must be an array (H, W), got shape {d.shape}")
    if not (np.isfinite(d).all() and (d >= 0).all()):
        raise InputError("range image depths must be finite and >= 0 (0 for no return)")
    if not max_depth > 0:
        raise InputError(f"max_depth must be positive metres, got {max_depth}")
    image = _colormap(1.0 - d / max_depth)
    image[d == 0] = 0
    return image
