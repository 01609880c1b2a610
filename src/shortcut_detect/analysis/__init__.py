"""Visual shortcut analysis on heatmaps: groups, regions, SpRAy, head overlap."""
