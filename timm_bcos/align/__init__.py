"""B-cosify without labels: align a B-cos student to its frozen conventional teacher (ALOE: Maser,
Gairola, Rao, Schiele, CVPR 2026). The student is the teacher's B-cosified copy; cosine (or MSE)
losses pull its pooled features, its features at a few depths, and (where the teacher has a head)
its logits towards the teacher's, on unlabeled images.

    from timm_bcos.align import Aligner, bcosified_student, load_teacher
    teacher = load_teacher("resnet50.a1_in1k")
    student = bcosified_student(teacher)
    aligner = Aligner(teacher, student)
    loss, parts = aligner(student, images)    # images as the student takes them ([0, 1] RGB)
"""
from .aligner import AlignConfig, Aligner, AlignError, bcosified_student, load_teacher
from .taps import default_layers

__all__ = ["AlignConfig", "Aligner", "AlignError", "bcosified_student", "default_layers", "load_teacher"]
