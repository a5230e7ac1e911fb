"""Media: video reading and frame sampling, CLIP preprocessing, sample videos."""
