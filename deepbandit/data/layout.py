"""File names of a dataset folder and of an export folder: defined once, here, with no dependency (serving
names its files without importing pyarrow)."""

# Dataset directory layout: <root>/impressions/ (a file or hive-partitioned folder of Parquet files),
# <root>/images.parquet, <root>/titles.parquet, and for simulated data <root>/world.npz + truth.json.
IMPRESSIONS_DIR = "impressions"
IMAGES_FILE = "images.parquet"
TITLES_FILE = "titles.parquet"
WORLD_FILE = "world.npz"  # simulated datasets: the world's ground truth (deepbandit.sim.world.World)
TRUTH_FILE = "truth.json"  # simulated datasets: the true value of each reference policy

# Export folder layout: written by deepbandit.export, read by deepbandit.serving (the manifest lists the files).
MANIFEST_FILE = "manifest.json"
EXPORT_MODEL_FILE = "model.onnx"
EXPORT_MODEL_FP16_FILE = "model_fp16.onnx"
EXPORT_IMAGES_FILE = "images.npy"  # not the dataset's images.parquet: the embeddings the graph reads
