"""hypergraph family."""
