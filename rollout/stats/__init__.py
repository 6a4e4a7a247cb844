"""Statistics on plain numbers: histograms and (later) sequential tests. No I/O here."""
