"""source -> partition lane -> batcher -> invoker -> failure policy -> offset tracker -> commit."""
