"""Dataset runs: `AttributionModel.attribute_dataset` and `seqattr.load_dataset_output` (docs/datasets.md)."""
