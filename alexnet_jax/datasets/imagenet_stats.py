"""ImageNet's (ILSVRC-2012 train) pixel statistics, in [0, 1] pixel units, written once here.

The paper subtracts the training set's mean image and adds colour noise along the principal
components of its RGB values; these are the per-channel mean and the RGB covariance's eigensystem
as fb.resnet.torch published them. Rows of ``PCA_EIGVEC`` are R, G, B; column i is the
eigenvector of eigenvalue i. No imports: configs read these without loading TensorFlow.
"""

MEAN_RGB = (0.485, 0.456, 0.406)
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
