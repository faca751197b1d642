"""Evaluation: WIDER FACE Easy/Medium/Hard AP, single-class VOC AP, 2-class AP, dataset-wide prediction.

Submodules are imported on use (``nbsrc.evaluation.widerface``, ``.detection_ap``, ``.results``,
``.twoclass``, ``.predict``, ``.rates``) so importing the package stays cheap.
"""
