"""ditlab.imaging: super-resolution (x2, x4) and restoration (denoise, deblur, JPEG artefacts) of real images with a
diffusion transformer trained here.

    from ditlab.imaging import read_image, restore, upscale, write_image

    img = read_image("photo.jpg")                      # PNG / TIFF / JPEG, 8 or 16 bit, grey or RGB, alpha kept
    out = upscale(img, scale=4)                        # degradation="real" (default) or "bicubic"; any size (tiled)
    write_image("photo_x4.png", out)                   # lossless; 16-bit in -> 16-bit out
    clean = restore(img, task="denoise")               # | "deblur" | "jpeg"
    print(evaluate(out.pixels, reference, scale=4))    # Y-PSNR / SSIM (BT.601, border = scale), colour bias
"""

from ditlab.imaging.io import Image, ImageError, read_image, write_image
from ditlab.imaging.metrics import evaluate
from ditlab.imaging.pipeline import DEGRADATIONS, SCALES, Enhancer, restore, upscale

__version__ = "0.1.0"

__all__ = ["DEGRADATIONS", "SCALES", "Enhancer", "Image", "ImageError", "evaluate", "read_image", "restore",
           "upscale", "write_image"]
