"""An Apple Watch ECG app CSV holding real ECG (the Polar H10 recording), for the tests of
the Apple Health export and of exports read from object storage."""

from pathlib import Path

import numpy as np
import pandas as pd

# The ECG app CSV of the test exports is written by `write_apple_ecg` from the real Polar H10
# recording (see the provider's SOURCE.md): 30 s of it from 09:51:00 in America/Chicago, the
# zone the recording was made in, resampled to 512 Hz.
ECG_START = pd.Timestamp("2024-05-05 09:51:00", tz="America/Chicago")
ECG_RATE_HZ = 512
ECG_SECONDS = 30
ECG_MEMBER = "apple_health_export/electrocardiograms/ecg_2024-05-05.csv"


def _ecg_number(value: float) -> str:
    """A sample as the ECG app writes it: at most three decimals, trailing zeros dropped."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def write_apple_ecg(polar_csv: Path) -> bytes:
    """An Apple Watch ECG app CSV (electrocardiograms/ecg_<date>.csv) holding real ECG.

    No Apple Watch recording is in ../shared/data, so the waveform is the real Polar H10 ECG
    (mV, ~130.16 Hz on its own clock) from ECG_START for ECG_SECONDS: in uV, linearly
    interpolated on the recording's clock onto a 512 Hz grid that starts at ECG_START, rounded
    to 0.001 uV. "Sample Rate" says 512 hertz because the file holds 512 samples a second.
    The layout (keys, order, quoting, blank lines, MICRO SIGN, LF) is the documented one
    (ohx_dagster/providers/apple_health/SOURCE.md); Name, Date of Birth, Classification,
    Symptoms, Software Version and Device are placeholders, not anyone's data.
    """
    frame = pd.read_csv(polar_csv, usecols=["time_ns", "ecg"])
    since_start_s = (frame["time_ns"].to_numpy() - ECG_START.value) / 1e9
    assert since_start_s[0] < 0 < ECG_SECONDS < since_start_s[-1]  # inside the recording
    uv = np.rint(frame["ecg"].to_numpy() * 1000)  # whole uV in the source (polar/SOURCE.md)
    grid_s = np.arange(ECG_RATE_HZ * ECG_SECONDS) / ECG_RATE_HZ
    samples = np.interp(grid_s, since_start_s, uv)
    header = [
        "Name,Test Person",
        'Date of Birth,"1 Jan 1970"',
        f"Recorded Date,{ECG_START.strftime('%Y-%m-%d %H:%M:%S %z')}",
        "Classification,Sinus Rhythm",
        "Symptoms,",
        "Software Version,1.90",
        'Device,"Watch7,2"',
        f"Sample Rate,{ECG_RATE_HZ} hertz",
        "",
        "",
        "Lead,Lead I",
        "Unit,\u00b5V",
        "",
    ]
    return ("\n".join(header + [_ecg_number(v) for v in samples]) + "\n").encode("utf-8")
