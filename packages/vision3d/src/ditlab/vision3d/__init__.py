"""ditlab.vision3d: point-cloud shape generation (DiT-3D) and LiDAR scan generation, sector completion and 16 -> 64
beam densification (a range-image DiT), with exact metrics and the formats people use.

    from ditlab.vision3d import LidarGenerator, ShapeGenerator, evaluate_sets, read_points, write_points

    clouds = ShapeGenerator().generate("chair", n=16)          # (16, 2048, 3), canonical frame
    scan = LidarGenerator().complete(read_points("000000.bin"), sector=(135, 225))
    write_points("000000_completed.bin", scan.points)          # KITTI float32 x4
    print(evaluate_sets(clouds, test_chairs, normalisation="global"))   # 1-NNA / COV / MMD (CD, EMD), JSD
"""

__version__ = "0.1.0"

from ditlab.vision3d.io import PointCloud, RangeSpec, read_points, write_points  # noqa: E402
from ditlab.vision3d.metrics import chamfer_distance, earth_movers_distance, evaluate_sets  # noqa: E402
from ditlab.vision3d.pipeline import LidarGenerator, LidarScan, ShapeGenerator  # noqa: E402

__all__ = ["LidarGenerator", "LidarScan", "PointCloud", "RangeSpec", "ShapeGenerator", "chamfer_distance",
           "earth_movers_distance", "evaluate_sets", "read_points", "write_points"]
