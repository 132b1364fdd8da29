"""Training data: CIFAR-10 sources, the decoded-array cache, subsets and batched loading."""
