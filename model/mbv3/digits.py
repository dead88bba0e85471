"""scikit-learn's digits (1,797 8x8 grayscale images, 10 classes) as an ImageNet-layout folder:
real data small enough to train to convergence on a laptop CPU in minutes. Needs scikit-learn,
imported only here."""
import os

import numpy as np


def write_digits_folder(root, size=32, seed=0):
    """Write every digit as root/train/<digit>/NNNN.png (NNNN: its index in load_digits), scaled
    from 0-16 to 0-255 and upscaled bilinearly to size x size, 8-bit grayscale; returns the number
    written (1797). The folder is the same for every seed: the digits are written as they are
    (seed is accepted so callers can pass one; a future variant may jitter the images with it)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    for index, (image, target) in enumerate(zip(pixels, digits.target)):
        folder = os.path.join(str(root), "train", str(int(target)))
        if not os.path.isdir(folder):
            os.makedirs(folder)
        img = Image.fromarray(image, "L").resize((size, size), Image.BILINEAR)
        img.save(os.path.join(folder, "%04d.png" % index))
    return len(pixels)
