"""Audio in: decoding and resampling (:mod:`.io`), the on-disk waveform cache, live sources
(microphone, stdin, files; :mod:`.sources`) and the synthetic sound library (:mod:`.synth`)."""
