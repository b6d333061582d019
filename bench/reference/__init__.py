"""Reference posteriors: made by NUTS or by modes, stored in posteriordb's layout, checked and advised on."""
