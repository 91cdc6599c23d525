"""The incident-room dashboard: pages, live regions and actions over the control plane's services."""
