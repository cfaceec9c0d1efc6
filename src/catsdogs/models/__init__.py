"""The networks: the chapter's CNNs, the VGG16 classifier, the ImageNet weights, the frozen-base features."""
