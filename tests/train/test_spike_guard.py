import math

from finetune.config import SpikeGuardSection
from finetune.train.spike_judge import SpikeJudge


def test_judge_flags_non_finite_and_large_losses_against_the_accepted_median():
    judge = SpikeJudge(SpikeGuardSection(factor=4.0, window=5, max_spikes=2))
    assert judge.is_spike(2.0, 1.0) == (False, None)  # the first step is the first reference
    assert judge.is_spike(2.2, 1.0)[0] is False
    assert judge.is_spike(9.0, 1.0) == (True, 2.1)  # > 4 x median(2.0, 2.2)
    assert judge.is_spike(math.nan, 1.0)[0] and judge.is_spike(2.0, math.inf)[0]
    assert judge.median() == 2.1, "spikes never enter the reference"


def test_judge_counts_spikes_in_a_sliding_window():
    judge = SpikeJudge(SpikeGuardSection(window=5, max_spikes=2))
    assert judge.record_spike(1) is False
    assert judge.record_spike(7) is False  # step 1 has left the 5-step window
    assert judge.record_spike(9) is True
