import { createContext } from 'preact'
import { useContext } from 'preact/hooks'

export const SessionContext = createContext(null)
export const CpContext = createContext(null)
export const useSession = () => useContext(SessionContext)
export const useCp = () => useContext(CpContext)
