"""The BrainSegFounder web app (``brainsegfounder web``): the Slicer panel's workflow in a browser,
on trame-slicer over the module's Lib. Installed with the ``web`` extra."""
