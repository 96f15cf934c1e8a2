"""pcavae: autoencoders with an online-PCA bottleneck beside vector quantizers."""
