"""RuntimeSlicer: runtime slices (windows of metrics, traces and logs) → one system-state embedding each."""
