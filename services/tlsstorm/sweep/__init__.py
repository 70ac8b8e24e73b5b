"""`tlsstorm sweep`: the cost of TLS spam across TLS ratios, fitted, plotted and saved."""
