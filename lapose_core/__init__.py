"""LA-Pose: latent action pretraining meets pose estimation (model, trainer, evaluation)."""
from pathlib import Path

__version__ = "0.1.0"
PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
# The KITTI rig's camera above the road (its published set-up): the bundled sample's, and the
# evaluation sequences'.
KITTI_CAMERA_HEIGHT_M = 1.65
