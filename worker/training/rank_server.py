"""Imported by the fork server that training ranks start from (and nowhere else): it makes the
server ignore SIGTERM and SIGINT.

Some supervisors signal the worker's whole process group at shutdown. The ranks ignore those
signals (a shutdown reaches them as a pause through rank 0's reporter), but they die with
their parent process (``PR_SET_PDEATHSIG``), which is the fork server: were it to die of the
signal, it would take the ranks down mid-checkpoint. It still exits when the worker does (its
end of the worker's pipe closes), and the ranks with it.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
