"""Presentation contexts the node accepts and proposes.

As acceptor pynetdicom picks, for each proposed context, the first syntax of *our* list that
the peer offered; the order below is therefore a preference. A sender that offers a
compressed syntax next to uncompressed ones (DCMTK's storescu does, for a compressed file)
usually holds its data in that syntax and often cannot decode it: asking for uncompressed
would make the store fail. So compressed syntaxes come first, as they are stored unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext

# SOP classes by UID (pynetdicom.sop_class names are generated at run time: no types).
VERIFICATION = UID("1.2.840.10008.1.1")
PATIENT_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.1.1")
PATIENT_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.1.2")
PATIENT_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.1.3")
PATIENT_ROOT_MODELS = frozenset({PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET})

#: Transfer syntaxes a sender may store in, in order of preference.
STORAGE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
    HTJ2K,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

#: Syntaxes for services without pixel data (echo, query, retrieve requests).
NATIVE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

#: Retired image and SR classes that older modalities still send (US and NM above all).
_RETIRED_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (retired)
    "1.2.840.10008.5.1.4.1.1.5",  # Nuclear Medicine Image Storage (retired)
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (retired)
    "1.2.840.10008.5.1.4.1.1.12.3",  # X-Ray Angiographic Bi-Plane Image Storage (retired)
    "1.2.840.10008.5.1.4.1.1.77.1",  # VL Image Storage - Trial (retired)
    "1.2.840.10008.5.1.4.1.1.77.2",  # VL Multi-frame Image Storage - Trial (retired)
    "1.2.840.10008.5.1.4.1.1.88.1",  # Text SR Storage - Trial (retired)
    "1.2.840.10008.5.1.4.1.1.88.2",  # Audio SR Storage - Trial (retired)
    "1.2.840.10008.5.1.4.1.1.88.3",  # Detail SR Storage - Trial (retired)
    "1.2.840.10008.5.1.4.1.1.88.4",  # Comprehensive SR Storage - Trial (retired)
)


def storage_sop_classes() -> list[str]:
    """Every storage SOP class the node takes: pynetdicom's list and the retired ones."""
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return classes + [uid for uid in _RETIRED_STORAGE if uid not in classes]


def retrieve_contexts(needed: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """Contexts to propose to a C-MOVE destination for ``(SOP class, stored syntax)`` pairs.

    Each SOP class gets one context with explicit and implicit little endian, and one per
    other stored syntax, so the peer can take the stored encoding or ask for uncompressed.
    pynetdicom proposes at most 128 contexts; instances beyond that fail their sub-operation.
    """
    contexts: list[PresentationContext] = []
    seen: set[tuple[str, str]] = set()
    for sop_class, stored in sorted(set(needed)):
        wanted = [(sop_class, "native")]
        if stored not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            wanted.insert(0, (sop_class, stored))
        for key in wanted:
            if key in seen or len(contexts) >= 128:
                continue
            seen.add(key)
            syntaxes: list[str | UID] = (
                [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
                if key[1] == "native"
                else [UID(key[1])]
            )
            contexts.append(build_context(sop_class, syntaxes))
    return contexts
