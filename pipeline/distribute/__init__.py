"""Distribution: tf.distribute strategy set-up, precision, and the custom multi-replica loop."""
