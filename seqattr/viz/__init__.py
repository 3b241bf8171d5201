"""Views of attribution outputs: terminal (rich), standalone HTML, notebook (HTML and treescope), matplotlib.

Each view is a function of an `AttributionOutput` or a `SequenceAttribution`, registered here by name and
imported on first use (see `seqattr.data.views`); the data classes' ``show``, ``to_html``, ``plot``, ... call
them through the registry.
"""

from seqattr.data.views import register_view

register_view("terminal", "seqattr.viz.console:show")
register_view("rich", "seqattr.viz.console:renderable")
register_view("html", "seqattr.viz.html:to_html")
register_view("notebook", "seqattr.viz.notebook:repr_html")
register_view("treescope", "seqattr.viz.notebook:treescope_repr")
register_view("plot", "seqattr.viz.plots:plot")
register_view("interactions_terminal", "seqattr.viz.interactions:show")
register_view("interactions_plot", "seqattr.viz.interactions:plot")
register_view("entities_terminal", "seqattr.viz.entities:show")
