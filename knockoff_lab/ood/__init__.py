"""Out-of-distribution scorers of Table 4's baselines, scored by the victim itself.

`lightning_modules.OODBaseline` (`main.py test`) runs one scorer, chosen by class path in YAML:

    model:
      class_path: lightning_modules.OODBaseline
      init_args:
        victim: runs/victim/digits_cnn/checkpoints/best.ckpt
        scorer:
          class_path: knockoff_lab.ood.ODIN
          init_args: {temperature: 1000.0, epsilon: 0.0014}

Every score is "higher = more out-of-distribution":
  MSP          minus the maximum softmax probability (Hendrycks and Gimpel 2017);
  ODIN         minus the maximum softmax at temperature T of the input moved by `epsilon` against
               the gradient of the loss of its predicted class (Liang et al. 2018, T = 1000,
               epsilon = 0.0014);
  Mahalanobis  the Mahalanobis distance of the input's features to the closest class mean, with
               class means and one shared covariance from the victim's training features and the
               same input pre-processing (Lee et al. 2018); several `layers` are combined by a
               logistic regression fitted on the in/out validation split.
`list_ood_scorers()` names them all (`register_ood_scorer` adds one).
"""

from knockoff_lab.ood.mahalanobis import (
    ClassGaussians,
    Mahalanobis,
    closest_distance,
    mahalanobis_inputs,
)
from knockoff_lab.ood.scorers import (
    MSP,
    ODIN,
    OOD_SCORERS,
    OODScorer,
    input_gradients,
    list_ood_scorers,
    max_softmax,
    odin_inputs,
    register_ood_scorer,
    signed_step,
)

__all__ = ["MSP", "ODIN", "OOD_SCORERS", "ClassGaussians", "Mahalanobis"]
__all__ += ["OODScorer", "closest_distance", "input_gradients", "list_ood_scorers"]
__all__ += ["mahalanobis_inputs", "max_softmax", "odin_inputs", "register_ood_scorer"]
__all__ += ["signed_step"]
