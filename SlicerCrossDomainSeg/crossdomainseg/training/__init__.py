"""Training of a bundle's networks: the reference segmenter (`source`) and the TD-GAN translator
(`translator`), from user folders or task directories (`datasets`); the `train` CLI (`cli`)."""
