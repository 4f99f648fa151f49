"""What every process of the service shares, the supervisor's and its children's: how it runs
and stops and shows it is alive (``lifecycle``), how it logs (``logs``), and how it talks to
systemd (``sd_notify``)."""
