"""Data io: images, videos and the real dataset formats (COCO, PNG masks, webdataset, MSR-VTT).

Import from the submodules (`clipheads.core.data.images`, `.video`, `.skipping`, `.coco`,
`.masks`, `.webdataset_pairs`, `.msrvtt`): this package imports nothing itself, so
reading an image or writing a video never pulls in torch, pycocotools or webdataset.
"""
