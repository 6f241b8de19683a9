"""HyperCT: a frozen DINOv3 ViT adapted per task by hypernetwork-generated LoRA.

The model is a library: nothing here knows about DICOM networking or databases.
"""
