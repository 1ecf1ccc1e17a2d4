"""The exam's learner modules: LeNet-5, ELU, sparsity and pruning, PCA vs autoencoder."""
