"""skinjax: a JAX/Flax trainer for transfer learning on dermoscopy images (HAM10000)."""
