"""LA-Pose: latent action pretraining meets pose estimation (model, trainer, evaluation)."""
from pathlib import Path

__version__ = "0.1.0"
PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
# The KITTI rig's camera above the road (its published set-up): the bundled sample's, and the
# evaluation sequences'.
KITTI_CAMERA_HEIGHT_M = 1.65
# The optical axis's angle below the road plane, in degrees, of the labelled heads' recordings
# (00_head: 2011-10-03; 07_head, 06_head: 2011-09-30): the pitch at which the road's lengths
# (lapose_core.road_plane) have no bias there given the ground-truth motion (`python
# training/geometry_study.py road`: +3.2 % / +4.6 % at 0.5 s / 1 s steps when level, -0.1 % / -0.5 %
# at 0.5). The rig was calibrated anew each recording day, so it is no constant of KITTI: the
# sample and 03_head (2011-09-26) are taken as level, the nominal mount.
LABELLED_KITTI_PITCH_DEG = 0.5
