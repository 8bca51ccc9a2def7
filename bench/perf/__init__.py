"""Performance: training throughput per trick, the ImageFolder loader's rate, model sizes and FLOPs."""
