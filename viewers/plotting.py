"""Plot pieces the cryohess viewers share: central sections of maps, image panels and colour bars."""

#: Central sections of a (z, y, x) volume: name and how to take it.
SECTIONS = (('xy', lambda v, c: v[c]), ('xz', lambda v, c: v[:, c]),
            ('yz', lambda v, c: v[:, :, c]))
#: Horizontal and vertical axis of each section as :func:`imagePanel` shows it (origin lower left).
SECTION_AXES = {'xy': ('x', 'y'), 'xz': ('x', 'z'), 'yz': ('y', 'z')}


def colorbar(plotter, mappable, label, bottom=0.12, top=0.85):
    """A colour bar in a margin on the right of the figure (the image panels keep
    their aspect, so a bar taken from their space would overlap them).  The layout
    is fixed here: the plotter would otherwise redo it when saving or showing."""
    plotter.tightLayout()
    plotter.tightLayoutOn = False
    figure = plotter.getFigure()
    figure.subplots_adjust(right=0.88)
    bar = figure.add_axes([0.9, bottom, 0.015, top - bottom])
    figure.colorbar(mappable, cax=bar, label=label)
    return bar


def imagePanel(plotter, title, image, cmap, axisNames=('', ''), **limits):
    """One image in the next subplot, without ticks; ``axisNames`` label its
    horizontal and vertical axes; returns its axes."""
    axes = plotter.createSubPlot(title, *axisNames)
    axes.imshow(image, cmap=cmap, origin='lower', **limits)
    axes.set_xticks([])
    axes.set_yticks([])
    return axes
