"""The input contract as an ``nn.Module`` of exportable ops: waveform in, model input out.

:class:`WaveformFrontEnd` computes what :func:`~ast_audio.features.contract.waveform_to_input`
computes (remove the clip's mean, Kaldi fbank, pad or cut to ``target_length``, normalise),
with only operations that ONNX exports and every ONNX runtime runs (onnxruntime-web's WASM
backend included): gathers, elementwise arithmetic, reductions and matmuls. The stages are
:mod:`~ast_audio.features.kaldi`'s, in its order, on its constants (window, mel rows,
FFT size from :func:`~ast_audio.features.kaldi.fbank_constants`); the one op exchanged is
the FFT, which becomes a matmul with the DFT's cos/sin rows
(:func:`~ast_audio.features.kaldi.dft_basis`) for the bins the mel matrix uses.

Shapes are fixed after the first step, whatever the input length: the waveform is
zero-padded or cut to the contract's ``samples`` (exactly ``target_length`` frames) and
the frames that lie past the real audio are zeroed before normalisation, as the batched
pipeline (:func:`~ast_audio.features.pipeline.batch_fbank`) does. So the framing is a
plain Gather with a constant index, and a graph exported from it takes any number of samples.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .contract import InputContract
from .kaldi import EPSILON, PREEMPHASIS, dft_basis, fbank_constants, frame_sizes

__all__ = ["WaveformFrontEnd"]


class WaveformFrontEnd(nn.Module):
    """``[batch, samples]`` mono float32 at the contract's rate -> model input ``[batch, T, F]``.

    Equal to ``waveform_to_input(waveform, contract)`` to float32 rounding (the DFT as a
    matmul rounds differently from the FFT). ``dtype=torch.float64`` computes in float64
    from float64 constants, as :func:`~ast_audio.features.kaldi.fbank` does for float64
    input. The constants are non-persistent buffers: they follow ``.to(device)`` and stay
    out of a state dict.
    """

    def __init__(self, contract: InputContract, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.contract = contract
        size, shift, fft_size = frame_sizes(contract.sample_rate, contract.frame_length, contract.frame_shift)
        window, banks, k0, k1 = fbank_constants(
            contract.sample_rate, contract.num_mel_bins, contract.frame_length, contract.frame_shift, dtype=dtype
        )
        cos, sin = dft_basis(size, fft_size, k0, k1)
        frames = contract.target_length
        starts = torch.arange(frames)[:, None] * shift  # (T, 1)
        buffers = {
            "frame_index": starts + torch.arange(size)[None, :],  # (T, L): samples of each frame
            "last_sample": starts[:, 0] + size - 1,  # (T,): a frame is real audio if this sample is
            "window": window,  # (L,)
            "dft_cos": cos.to(dtype),  # (L, K')
            "dft_sin": sin.to(dtype),  # (L, K')
            "mel_banks": banks,  # (K', M)
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.clone(), persistent=False)
        self.samples = contract.samples

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = waveform.to(self.window.dtype)
        x = x - x.mean(-1, keepdim=True)  # (B, S): the clip's mean removed, over all its samples
        padding = x.new_zeros((x.shape[0], self.samples))  # (B, N)
        fitted = torch.cat([x, padding], -1)[:, : self.samples]  # (B, N): cut or zero-padded
        audio = torch.cat([torch.ones_like(x), padding], -1)[:, : self.samples]  # (B, N): 1 on real samples
        frames = fitted.index_select(1, self.frame_index.flatten()).unflatten(1, self.frame_index.shape)  # (B, T, L)
        frames = frames - frames.mean(-1, keepdim=True)  # DC removal per frame
        previous = torch.cat([frames[..., :1], frames[..., :-1]], -1)  # (B, T, L)
        frames = (frames - previous * PREEMPHASIS) * self.window
        real = torch.matmul(frames, self.dft_cos)  # (B, T, K')
        imag = torch.matmul(frames, self.dft_sin)  # (B, T, K')
        power = real * real + imag * imag
        features = torch.matmul(power, self.mel_banks).clamp_min(EPSILON).log()  # (B, T, M)
        features = features * audio.index_select(1, self.last_sample)[..., None]  # frames past the audio are zero
        if self.contract.normalize:
            features = (features - self.contract.mean) / (2.0 * self.contract.std)
        return features
