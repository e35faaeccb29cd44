"""The PyQt6 bedside overlay (installed as edge_assist.ui). The core never imports Qt."""
