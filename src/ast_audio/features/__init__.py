"""From audio to the model's input: Kaldi filterbanks, the input contract, augmentation and
the batched pipeline that training, evaluation and inference share.

``ast_audio.features`` keeps offering what it always did (``fbank``, ``InputContract``,
``waveform_to_input``...); ``FeatureConfig`` is the older name of ``InputContract``.
"""

from .contract import InputContract, file_to_input, normalize, pad_or_cut, waveform_to_input
from .kaldi import fbank, frame_sizes, mel_banks

FeatureConfig = InputContract  # the older name, kept for code written against it

__all__ = [
    "FeatureConfig", "InputContract", "fbank", "file_to_input", "frame_sizes", "mel_banks", "normalize",
    "pad_or_cut", "waveform_to_input",
]  # fmt: skip
