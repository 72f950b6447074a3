"""The input path: sources (class folders, TFDS), split specs, image probing and decoding, augmentation."""
