"""Data: label readers (`nbsrc.data.readers`), original sizes, the label frame, datasets, loaders, validation, the
demo dataset. Import names from their modules:

- `records`: `ImageRecord`, the typed per-image labels every reader returns
- `readers`: one reader per annotation format, `read_labels(path, format="auto")`
- `image_sizes`: original sizes: `ImageSizes`, sizes CSV, image headers, a split's WIDER FACE tree
- `label_frame`: labels into the network frame (`LabelFrame`) and which frame they are in
- `layout`: where labels, latents and images sit in a split folder
- `split_index`: one pass over a split: labels, records, latent files, sizes, label frame
- `latent_dataset`: `LatentWiderFace`
- `rgb_dataset`: `WiderFaceRGB`
- `transforms`: the RetinaFace augmentation and the evaluation resize of image and annotations
- `collate`: `detection_collate`
- `seeding`: per-sample augmentation seeds (`SeededSampler`)
- `loaders`: `build_dataset`, `build_dataloaders` (the only data code reading `Config`)
- `defects`: defects with file and line, the ``on_error`` policy, the per-item checks
- `validate`: `validate_dataset`, `check_label_frame`
- `latent_values`: NaN/Inf check of latent files at indexing, cached by size and mtime
- `demo`: `make_demo_data`, `demo_dataset`, `resolve_dataset_root`
- `published_layout`: the demo laid out as ``retina-modify`` beside a WIDER FACE copy

The package itself imports nothing, so ``import nbsrc.data.records`` stays light.
"""
