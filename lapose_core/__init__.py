"""LA-Pose: latent action pretraining meets pose estimation (model, trainer, evaluation)."""
from pathlib import Path

__version__ = "0.1.0"
PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
# The KITTI rig's camera above the road (its published set-up): the bundled sample's, and the
# evaluation sequences'.
KITTI_CAMERA_HEIGHT_M = 1.65
# Its optical axis's angle below the road plane, in degrees: the pitch at which the road's lengths
# (lapose_core.road_plane) have no bias on the labelled 00_head, 07_head and 06_head given their
# ground-truth motion (`python training/geometry_study.py road`: +3.2 % / +4.6 % at 0.5 s / 1 s
# steps with 0, -0.1 % / -0.5 % with 0.5). One rig, so the same on every KITTI sequence.
KITTI_CAMERA_PITCH_DEG = 0.5
