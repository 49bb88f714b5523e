"""What a trained model did: `cnn evaluate`'s job, mistakes, saliency and Grad-CAM, feature maps,
pictures, and the terminal and HTML reports."""
