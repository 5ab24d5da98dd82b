"""Images in: safe decoding, dataset folders and splits, downloads, archives and uploads."""
